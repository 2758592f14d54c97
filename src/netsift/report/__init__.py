"""Reports: the self-contained HTML report of a batch run."""
