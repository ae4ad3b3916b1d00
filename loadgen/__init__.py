"""The load generator behind `tandem bench`: how a Tandem or any OpenAI-compatible server holds up
as concurrency grows. Metric definitions: docs/metrics.md.

Map (one concept per module):
  cli.py            flags -> BenchPlan (bad values: one line, exit 2)
  bench.py          one invocation: prompts, points (single / sweep / capacity probes), files
  workers.py        one load point, in this process or split over worker processes
  runner.py         the event loop side of one point: schedule, send, time out, Ctrl-C
  load_pattern.py   LoadSpec, closed / open loop (Poisson, gamma), splitting across workers
  backends/         Backend interface; tandem (gRPC), openai / openai-chat (HTTP + SSE)
  datasets/         random, prefix_repetition, sharegpt, custom JSONL
  tokens.py         exact (server's tokenizer) or approximate client-side token counts
  records.py        BenchRequest in, RequestRecord out
  metrics.py        records -> metrics; goodput; SLO values with failures counted
  sweep.py          --sweep; capacity.py: --slo and the bracketing + bisection search
  metric_definitions.py  every metric's one-line definition; stats.py  mean/median/std/pNN
  result.py         BenchResult / PointResult; report/: console, JSON, CSV, PNG, HTML
  event_loop.py     uvloop when installed; process_limits.py  open-files limit; progress.py
"""
