"""A writer process for the fault tests: uses the library API and reports each durable put.

Modes:
  loop STORE TAG              put forever (bounded), printing `ACK key version hash n` after each
  batch STORE TAG COUNT       wait for a line on stdin, then COUNT puts over shared and own keys
  same STORE KEY SIZE SEED    wait for a line on stdin, then put one SIZE-byte blob under KEY
  once STORE KEY TEXT         one put of TEXT under KEY (for crash points)
  delete STORE KEY            one delete of KEY (for crash points)
  hold-lock STORE             take the writers' lock, say LOCKED, and keep it until killed
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from workload import content_for, key_for  # noqa: E402

from imstore import Store  # noqa: E402


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def loop(store: Store, tag: str) -> None:
    say("READY")
    for number in range(1_000_000):
        result = store.put(key_for(tag, number), content_for(tag, number))
        version = result.version
        say(f"ACK {version.key} {version.version} {version.hash} {number}")


def batch(store: Store, tag: str, count: int) -> None:
    say("READY")
    sys.stdin.readline()
    for number in range(count):
        key = f"shared/{number % 3}" if number % 2 else f"own/{tag}"
        version = store.put(key, f"{tag}/{number}".encode()).version
        say(f"ACK {version.key} {version.version} {version.hash} {number}")


def same(store: Store, key: str, size: int, seed: str) -> None:
    data = random.Random(seed).randbytes(size)
    say("READY")
    sys.stdin.readline()
    version = store.put(key, data).version
    say(f"ACK {version.key} {version.version} {version.hash} 0")


def hold_lock(store: Store) -> None:
    with store.log.locked():
        say("LOCKED")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # held until the test kills us
            time.sleep(0.05)


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    with Store.open(path) as store:
        if mode == "loop":
            loop(store, argv[2])
        elif mode == "batch":
            batch(store, argv[2], int(argv[3]))
        elif mode == "same":
            same(store, argv[2], int(argv[3]), argv[4])
        elif mode == "once":
            version = store.put(argv[2], argv[3].encode()).version
            say(f"ACK {version.key} {version.version} {version.hash} 0")
        elif mode == "delete":
            version = store.delete(argv[2])
            say(f"ACK {version.key} {version.version} - 0")
        elif mode == "hold-lock":
            hold_lock(store)
        else:
            raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
