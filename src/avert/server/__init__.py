"""`avert serve`: an A1111-compatible HTTP API, a native API with every negative control, a job queue and a page.

Modules: `config` (the frozen server settings), `registry` (models by name from configured folders),
`jobs` (the bounded FIFO queue, one worker thread per model), `requests` (JSON bodies to validated requests),
`a1111` and `native` (the two routers), `security` (bind check, API key, body size), `app` (assembly, run).
Nothing outside `avert.cli` imports this package.
"""
