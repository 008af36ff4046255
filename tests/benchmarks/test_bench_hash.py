"""sha256 of a 1 GiB cached file, against `openssl dgst -sha256` on the same file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from asset_watcher.fingerprint import fingerprint
from tests.benchmarks.conftest import best_of, report, run_quietly

SIZE_BYTES = 1 << 30


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_sha256_of_1gib_against_openssl(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for _ in range(SIZE_BYTES // len(block)):
            handle.write(block)
    run_quietly("cat", str(path))  # into the page cache

    openssl = best_of(3, lambda: run_quietly("openssl", "dgst", "-sha256", str(path)))
    ours = best_of(3, lambda: fingerprint(str(path), "sha256"))
    report("sha256 1 GiB", ours, "openssl dgst -sha256", openssl, "<= 1.0")
    print(f"[benchmark] throughput: ours {SIZE_BYTES / ours / 1e9:.2f} GB/s, "
          f"openssl {SIZE_BYTES / openssl / 1e9:.2f} GB/s")  # fmt: skip
    assert fingerprint(str(path)).stat.size == SIZE_BYTES
