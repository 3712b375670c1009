"""One module per family of scenarios; each function returns report rows."""
