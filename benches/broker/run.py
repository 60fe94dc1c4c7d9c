#!/usr/bin/env python3
"""Tansu storage engines side by side: produce N records, then consume them
from offset zero, on memory://, sqlite:// and postgres:// in one run.

Usage: benches/broker/run.py TANSU_BIN [N]   (scripts/dev bench-broker)
PostgreSQL: the local server (trust auth); the database tansu_bench is
dropped and created. Prints a Markdown table for docs/BENCHMARKS.md.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(tansu, storage, cwd, port):
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", storage],
        cwd=cwd, env={**os.environ, "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    for _ in range(100):
        try:
            admin.list_topics(timeout=1)
            return proc, admin
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"tansu with {storage} did not start")


def run(tansu, storage, n, value):
    cwd = tempfile.mkdtemp(prefix="tansu-bench-")
    port = free_port()
    proc, admin = start(tansu, storage, cwd, port)
    try:
        for f in admin.create_topics([NewTopic("bench", 1, 1)]).values():
            f.result()
        bootstrap = f"127.0.0.1:{port}"
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                      "batch.size": 1000000, "queue.buffering.max.messages": 1000000})
        t = time.monotonic()
        for i in range(n):
            while True:
                try:
                    p.produce("bench", key=f"E{i:07d}", value=value)
                    break
                except BufferError:
                    p.poll(0.01)
        p.flush()
        produce = n / (time.monotonic() - t)
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                      "enable.auto.commit": False, "fetch.max.bytes": 52428800})
        c.assign([TopicPartition("bench", 0, 0)])
        got, t = 0, time.monotonic()
        while got < n:
            msgs = c.consume(10000, timeout=5)
            if not msgs:
                break
            got += sum(1 for m in msgs if not m.error())
        consume = got / (time.monotonic() - t)
        c.close()
        return produce, consume, got
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(cwd, ignore_errors=True)


def main():
    tansu = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    value = b'{"id":"E0000001","name":"x","pad":"' + b"y" * 250 + b'"}'
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "DROP DATABASE IF EXISTS tansu_bench"], check=False)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "CREATE DATABASE tansu_bench"], check=False)
    engines = [("memory", "memory://tansu/"), ("sqlite", "sqlite://tansu.db"),
               ("postgres", "postgres://postgres@127.0.0.1/tansu_bench")]
    print(f"| engine | produce (records/s) | consume (records/s) | records read | keeps the log |")
    print("|---|---|---|---|---|")
    for name, storage in engines:
        try:
            produce, consume, got = run(tansu, storage, n, value)
            durable = "no" if name == "memory" else "yes"
            print(f"| {name} | {produce:,.0f} | {consume:,.0f} | {got:,} of {n:,} | {durable} |", flush=True)
        except SystemExit as e:
            print(f"| {name} | {e} | | | |", flush=True)


if __name__ == "__main__":
    main()
