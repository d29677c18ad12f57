"""Loop time spent on distinct, long, hostile user agents: before and after the bounds.

Before: the whole agent parsed by ua-parser and matched against the crawler list's Python
patterns. After (ingest/useragent.py): the agent cut to 512 characters, the crawler list
matched by one Rust regex set. Each run uses fresh agents (no cache hits), both in one run.

    .venv/bin/python -m bench.user_agents [--agents 15] [--length 4096] [--rounds 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import time
from collections.abc import Callable

import crawleruseragents
import ua_parser

from ingest.useragent import parse_agent


def before(ua: str) -> bool:
    ua_parser.parse(ua)
    return crawleruseragents.is_crawler(ua)


def after(ua: str) -> bool:
    return parse_agent(ua).is_bot


def timed(check: Callable[[str], bool], agents: int, length: int) -> float:
    fresh = [
        f"Mozilla/5.0 ({random.random()}) "
        + "".join(random.choices(string.ascii_letters, k=length))
        for _ in range(agents)
    ]
    started = time.perf_counter()
    for ua in fresh:
        check(ua)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=15)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    old = statistics.median(timed(before, args.agents, args.length) for _ in range(args.rounds))
    new = statistics.median(timed(after, args.agents, args.length) for _ in range(args.rounds))
    print(f"{args.agents} distinct {args.length}-character user agents, median of {args.rounds}:")
    print(f"  before (whole agent, Python crawler patterns): {old:8.1f} ms")
    print(f"  after (cut to 512, Rust regex set):            {new:8.1f} ms")
    print(f"  after / before: {new / old:.3f}")


if __name__ == "__main__":
    main()
