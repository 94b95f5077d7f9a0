"""CLI command groups; each module decorates its functions with ``@app.command``."""
