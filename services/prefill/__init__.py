"""PrefillWorker: prompt -> KV pages + first token; ships pages to the reserved decode blocks."""
