"""A small application on redis-py (Debian's python3-redis) against a Presage node.

Run by tools/tests/e2e/redis_apps.rs: sessions with a time to live, a rate-limit counter
(INCR + EXPIRE), a hash per user, and money transfers under WATCH/MULTI from several threads.
Exits non-zero with the failed check on the first difference from what a Redis application
expects.

    python3 redis_app.py HOST PORT [--ca CA --user USER --password PASSWORD]
"""

import argparse
import sys
import threading
import time

import redis


def connect(args):
    kw = dict(host=args.host, port=args.port, socket_timeout=10, decode_responses=True)
    if args.ca:
        kw.update(ssl=True, ssl_ca_certs=args.ca, username=args.user, password=args.password)
    return redis.Redis(**kw)


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def sessions(r):
    r.setex("py:session:1", 30, "token-1")
    r.set("py:session:2", "token-2", px=200)
    check(r.get("py:session:1") == "token-1", "a session reads back")
    check(25 <= r.ttl("py:session:1") <= 30, f"a session's TTL, got {r.ttl('py:session:1')}")
    check(r.expire("py:session:1", 60), "a session is refreshed")
    check(55 <= r.ttl("py:session:1") <= 60, "the refreshed TTL")
    time.sleep(0.5)
    check(r.get("py:session:2") is None, "a session past its TTL is gone")
    check(r.ttl("py:session:2") == -2, "TTL of a gone key is -2")
    check(r.persist("py:session:1") and r.ttl("py:session:1") == -1, "PERSIST removes the TTL")


def rate_limit(r):
    key = "py:rate:user-7"
    for i in range(1, 6):
        pipe = r.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 60, nx=True)
        count, _ = pipe.execute()
        check(count == i, f"the counter counts ({count} != {i})")
    check(55 <= r.ttl(key) <= 60, "the window's TTL was set once and kept by INCR")
    check(r.incrbyfloat("py:rate:float", 0.5) == 0.5, "INCRBYFLOAT")


def users(r):
    r.hset("py:user:42", mapping={"name": "Ann", "email": "ann@example.com", "logins": 0})
    for _ in range(3):
        r.hincrby("py:user:42", "logins", 1)
    user = r.hgetall("py:user:42")
    check(user == {"name": "Ann", "email": "ann@example.com", "logins": "3"}, f"HGETALL: {user}")
    check(r.hdel("py:user:42", "email") == 1 and not r.hexists("py:user:42", "email"), "HDEL")
    check(r.hlen("py:user:42") == 2 and r.type("py:user:42") == "hash", "HLEN and TYPE")
    check(sorted(r.hkeys("py:user:42")) == ["logins", "name"], "HKEYS")
    try:
        r.get("py:user:42")
        check(False, "GET of a hash is WRONGTYPE")
    except redis.ResponseError as e:
        check("WRONGTYPE" in str(e), f"GET of a hash: {e}")


def transfers(args, r):
    r.mset({"py:acct:alice": 100, "py:acct:bob": 0})
    retries = []

    def move(amount, times):
        c = connect(args)
        for _ in range(times):

            def step(pipe):
                alice = int(pipe.get("py:acct:alice"))
                bob = int(pipe.get("py:acct:bob"))
                pipe.multi()
                pipe.set("py:acct:alice", alice - amount)
                pipe.set("py:acct:bob", bob + amount)

            tries = [0]

            def counted(pipe):
                tries[0] += 1
                step(pipe)

            c.transaction(counted, "py:acct:alice", "py:acct:bob")
            retries.append(tries[0] - 1)

    threads = [threading.Thread(target=move, args=(1, 10)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alice, bob = int(r.get("py:acct:alice")), int(r.get("py:acct:bob"))
    check((alice, bob) == (60, 40), f"every transfer applied once: alice {alice}, bob {bob}")
    # A watched key changed by another client aborts the transaction.
    other = connect(args)
    pipe = r.pipeline()
    pipe.watch("py:acct:alice")
    other.set("py:acct:alice", 1000)
    pipe.multi()
    pipe.set("py:acct:alice", 0)
    try:
        pipe.execute()
        check(False, "EXEC after a watched key changed must abort")
    except redis.WatchError:
        pass
    check(r.get("py:acct:alice") == "1000", "the aborted transaction wrote nothing")
    print(f"transfers: 40 applied, {sum(retries)} retried after a conflict")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--ca")
    p.add_argument("--user")
    p.add_argument("--password")
    args = p.parse_args()
    r = connect(args)
    check(r.ping(), "PING")
    sessions(r)
    rate_limit(r)
    users(r)
    transfers(args, r)
    print("redis-py application scenario passed")


if __name__ == "__main__":
    main()
