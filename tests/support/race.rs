//! Traffic racing UpdateUsage top-ups: the scenario the store suite and
//! the socket-level concurrency test both run, each through its own door.

use std::future::Future;

/// Runs `workers` tasks that each make `per_worker` requests while
/// `top_ups` tasks each top the quota up once, then makes requests until
/// one is refused. Answers how many were admitted in all: exactly the
/// top-ups on a quota that started at 0, whatever the interleaving.
pub async fn admitted_while_topping_up<R, RF, T, TF>(
    (workers, per_worker): (usize, usize),
    request: R,
    top_ups: usize,
    top_up: T,
) -> u64
where
    R: Fn() -> RF + Clone + Send + 'static,
    RF: Future<Output = bool> + Send,
    T: Fn() -> TF,
    TF: Future<Output = ()> + Send + 'static,
{
    let traffic: Vec<_> = (0..workers)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..per_worker {
                    admitted += u64::from(request().await);
                }
                admitted
            })
        })
        .collect();
    let top_ups: Vec<_> = (0..top_ups).map(|_| tokio::spawn(top_up())).collect();
    for top_up in top_ups {
        top_up.await.unwrap();
    }
    let mut admitted = 0;
    for task in traffic {
        admitted += task.await.unwrap();
    }
    // What the traffic left is still there, and not one more.
    while request().await {
        admitted += 1;
    }
    admitted
}
