"""GetDiagnostics: collect the logs, the frame trace and the configuration within a time
window (`collect`), redact and compress them, and upload the archive (`upload`)."""
