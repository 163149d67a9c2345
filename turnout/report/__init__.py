"""The run record's room: run-folder names (RunDir), the JSON-lines format, charts (matplotlib) and HTML pages
(jinja2). It imports nothing above `atomic` and `errors`, so train, qualify, failover, serve and cli all use it."""
