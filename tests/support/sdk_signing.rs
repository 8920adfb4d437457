//! Signing as the AWS SDKs do, with the `aws-sigv4` crate: service
//! `apigateway`, region `us-east-1`. Shared by the admin client of the
//! integration tests (`aws.rs`) and the SigV4 unit tests
//! (`src/admin/sigv4/tests.rs` includes this file by path).
#![allow(dead_code, unreachable_pub)]

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SigningInstructions, SigningSettings,
};
use aws_sigv4::sign::v4::SigningParams;
use aws_smithy_runtime_api::client::identity::Identity;

/// What signing `method uri` (with `headers` and `body`) as `akid`/`secret`
/// at `time` adds to the request: `x-amz-date` and `authorization`.
pub fn sign_as_sdk(
    (akid, secret): (&str, &str),
    time: SystemTime,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> SigningInstructions {
    let identity: Identity = Credentials::new(akid, secret, None, None, "test").into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("apigateway")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        method,
        uri,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions
}
