# usage: t_outage.py leases how(kill|stop)
import sys, time, subprocess, signal, json, urllib.request
from lib import *
import botocore
leases=sys.argv[1]=="1"; how=sys.argv[2]
try:
    r=start_redis(7400); redis="redis://127.0.0.1:7400"
    start_gw("A",9400,9401,redis,leases); start_gw("B",9402,9403,redis,leases)
    aA=admin(9401); aB=admin(9403)
    plan=mkplan(aA,"o",limit=100); key=mkkey(aA,plan,"okey-0123456789abcdef0")
    import urllib.request as U
    def req(port):
        try: return U.urlopen(U.Request(f"http://127.0.0.1:{port}/x",headers={"x-api-key":"okey-0123456789abcdef0"}),timeout=5).status
        except urllib.error.HTTPError as e: return e.code
    for i in range(10): req(9400+2*(i%2))
    time.sleep(1.5)
    before=dict(usage=usage(aA,plan,key),key=aA.get_api_key(apiKey=key)["enabled"],plan=aA.get_usage_plan(usagePlanId=plan)["quota"],nkeys=len(aA.get_api_keys(limit=500)["items"]))
    print("before",before)
    if how=="kill": r.kill(); r.wait()
    else: r.send_signal(signal.SIGSTOP)
    time.sleep(0.5)
    ops=[("update_usage",lambda: aA.update_usage(usagePlanId=plan,keyId=key,patchOperations=[{"op":"replace","path":"/remaining","value":"5"}])),
         ("add_usage",lambda: aA.update_usage(usagePlanId=plan,keyId=key,patchOperations=[{"op":"add","path":"/remaining","value":"-50"}])),
         ("disable",lambda: aA.update_api_key(apiKey=key,patchOperations=[{"op":"replace","path":"/enabled","value":"false"}])),
         ("quota",lambda: aB.update_usage_plan(usagePlanId=plan,patchOperations=[{"op":"replace","path":"/quota/limit","value":"7"}])),
         ("create_key",lambda: aA.create_api_key(name="newkey",value="newkey-0123456789abcdef",enabled=True)),
         ("delete_plan_key",lambda: aB.delete_usage_plan_key(usagePlanId=plan,keyId=key)),
         ("get_usage",lambda: usage(aA,plan,key))]
    for name,f in ops:
        t0=time.time()
        try: out=f(); print(name,"SUCCEEDED",str(out)[:150],round(time.time()-t0,2))
        except botocore.exceptions.ClientError as e:
            print(name,"ERR",e.response["ResponseMetadata"]["HTTPStatusCode"],e.response["Error"],round(time.time()-t0,2))
        except Exception as e: print(name,"EXC",repr(e)[:200],round(time.time()-t0,2))
    # data plane during outage
    print("dataplane during outage", [req(9400),req(9402)])
    if how=="kill": r=start_redis(7400)
    else: r.send_signal(signal.SIGCONT)
    wait_ready(9401); wait_ready(9403); time.sleep(2)
    after=dict(usage=usage(aA,plan,key),key=aA.get_api_key(apiKey=key)["enabled"],plan=aA.get_usage_plan(usagePlanId=plan)["quota"],nkeys=len(aA.get_api_keys(limit=500)["items"]))
    afterB=dict(usage=usage(aB,plan,key),key=aB.get_api_key(apiKey=key)["enabled"],plan=aB.get_usage_plan(usagePlanId=plan)["quota"],nkeys=len(aB.get_api_keys(limit=500)["items"]),inplan=[k["id"] for k in aB.get_usage_plan_keys(usagePlanId=plan)["items"]])
    print("afterA",after); print("afterB",afterB)
    print("dataplane after", [req(9400),req(9402)])
finally: killall()
