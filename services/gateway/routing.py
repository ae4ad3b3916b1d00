"""Which worker gets a request. Pure functions of the workers' state, so they decide in
microseconds and are tested without servers.

- Decode first: among the healthy workers not draining whose available blocks hold the request,
  the one with the most available blocks (ties: fewest running requests). The caller reserves there and falls
  back to the next one on refusal.
- Prefill then: the one that already caches the longest run of the prompt's leading blocks
  (prefix-cache affinity), else the one with the fewest queued prompt tokens. Affinity only wins
  while that worker's queue is not much longer than the least-loaded one's.
"""

from __future__ import annotations

from typing import Sequence

from services.gateway.workers import WorkerHandle

AFFINITY_BLOCKS = 8                # leading prompt blocks compared against the workers' caches
AFFINITY_MAX_EXTRA_QUEUE = 4096    # queued tokens an affine worker may carry beyond the least loaded


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def rank_decode_workers(workers: Sequence[WorkerHandle], num_tokens: int,
                        exclude: frozenset[str] = frozenset()) -> list[WorkerHandle]:
    """Healthy decode workers that can hold num_tokens now, best first."""
    fitting = [w for w in workers
               if w.accepting and w.address not in exclude and w.block_size
               and w.available_blocks >= blocks_for(num_tokens, w.block_size)]
    return sorted(fitting, key=lambda w: (-w.available_blocks, w.running_requests))


def largest_pool_tokens(workers: Sequence[WorkerHandle]) -> int:
    """The most tokens any one of these workers can ever hold: beyond this a request never fits."""
    return max((w.num_blocks * w.block_size for w in workers if w.report is not None), default=0)


def pick_prefill_worker(workers: Sequence[WorkerHandle], prompt_block_hashes: Sequence[int],
                        exclude: frozenset[str] = frozenset()) -> WorkerHandle | None:
    candidates = [w for w in workers if w.accepting and w.address not in exclude]
    if not candidates:
        return None
    least = min(candidates, key=lambda w: w.queued_prompt_tokens)
    leading = prompt_block_hashes[:AFFINITY_BLOCKS]
    if not leading:
        return least

    def cached_run(w: WorkerHandle) -> int:
        cached = w.cached_block_hashes
        run = 0
        for h in leading:
            if h not in cached:
                break
            run += 1
        return run

    best = max(candidates, key=lambda w: (cached_run(w), -w.queued_prompt_tokens))
    if cached_run(best) and best.queued_prompt_tokens <= least.queued_prompt_tokens + AFFINITY_MAX_EXTRA_QUEUE:
        return best
    return least
