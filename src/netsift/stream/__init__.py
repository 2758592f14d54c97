"""Stream mode: spool directories and live capture through windows, watermark, checkpoints."""
