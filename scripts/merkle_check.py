"""An independent check of countersign's ledger tree, written from RFC 9162 with the `blake3`
package from PyPI: reads {"leaves": [hex leaf data...], "roots": [hex root of the first n leaves,
for n = 1..len]} from the file named on the command line, recomputes every root, and exits
non-zero naming the first size whose root differs."""

import json
import sys

from blake3 import blake3


def leaf_hash(data: bytes) -> bytes:
    return blake3(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return blake3(b"\x01" + left + right).digest()


def mth(leaves: list) -> bytes:
    """RFC 9162 section 2.1.1: split at the largest power of two smaller than n."""
    n = len(leaves)
    if n == 0:
        return blake3(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as file:
        case = json.load(file)
    leaves = [leaf_hash(bytes.fromhex(data)) for data in case["leaves"]]
    for size, expected in enumerate(case["roots"], start=1):
        root = mth(leaves[:size]).hex()
        if root != expected:
            print(f"size {size}: python computes {root}, countersign {expected}")
            return 1
    print(f"ok: {len(case['roots'])} roots agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
