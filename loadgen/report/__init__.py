"""What a benchmark leaves behind: console tables, JSON, CSV, PNG plots and an HTML report."""
