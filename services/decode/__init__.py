"""DecodeWorker: reserves blocks, receives pages, joins the running batch, streams tokens."""
