"""Sticky percentage bucketing, compatible with Unleash's normalised murmur3.

Unleash puts a context in bucket ``mmh3("groupId:value", unsigned) % 100 + 1`` and turns
a flag on when the bucket is <= the rollout percentage. We do exactly that at whole
percentages, so an agent that an Unleash SDK would include, we include too.

Fractional percentages (the progressive ramp produces them, e.g. 5.5%) need a finer
position, and it must not break the two properties that matter: agreement with
Unleash at whole percentages, and monotonicity (raising the percentage only ever adds
contexts). So the position of a context is its Unleash bucket, 0-based, plus a
fraction taken from the *other* bits of the same hash:

    position = (h % 100) + ((h // 100) % 10_000) / 10_000        in [0, 100)
    on  <=>  position < percentage

At a whole percentage p, ``position < p`` holds exactly when ``h % 100 + 1 <= p`` (the
fraction is < 1), so the answer is Unleash's. For 5.5%, buckets 1-5 are on and about
half of bucket 6 (those whose fraction is below 0.5) joins them; at 6% the rest of
bucket 6 joins. The position never depends on the percentage, so raising it only adds.
The resolution is 1/10,000 of a percent.

mmh3 is given bytes, never a str: mmh3 5.3.1 (the newest release) hashes a str through
an unchecked PyUnicode_AsUTF8AndSize and segfaults on a lone surrogate ("\ud800"). For
every valid string the UTF-8 bytes hash exactly as the str did (and as Unleash hashes
them); a lone surrogate, which the HTTP layer already refuses, is hashed through
"surrogatepass" instead of killing the process.
"""

from __future__ import annotations

import mmh3


def _key(group_id: str, value: str) -> bytes:
    return f"{group_id}:{value}".encode("utf-8", "surrogatepass")


def normalized_hash(group_id: str, value: str) -> int:
    """Unleash's bucket 1-100 for `value` in `group_id`."""
    return mmh3.hash(_key(group_id, value), signed=False) % 100 + 1


def rollout_position(group_id: str, value: str) -> float:
    """Where `value` sits on the 0-100 line of `group_id` (see the module docstring)."""
    h = mmh3.hash(_key(group_id, value), signed=False)
    return h % 100 + (h // 100 % 10_000) / 10_000


def in_rollout(group_id: str, value: str, percentage: float) -> bool:
    """True when `value` is among the first `percentage` % of `group_id`."""
    if percentage >= 100:
        return True
    if percentage <= 0:
        return False
    h = mmh3.hash(_key(group_id, value), signed=False)
    return h % 100 + (h // 100 % 10_000) / 10_000 < percentage
