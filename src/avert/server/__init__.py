"""`avert serve`: an A1111-compatible HTTP API, a native API with every negative control, a job queue and a page.

Modules: `config` (the frozen server settings), `registry` (models by name from configured folders),
`jobs` (the bounded FIFO queue, one worker thread per model), `bodies` (JSON bodies to validated requests),
`a1111`, `a1111_info` and `native` (the routers), `openapi` (the bodies' JSON Schema), `security` (API keys, clients, body size), `guards` (Host, Origin,
content type, rate, response headers), `docs` (the offline API page), `app` (assembly, run).
docs/security.md has the threat model.
Nothing outside `avert.cli` imports this package.
"""
