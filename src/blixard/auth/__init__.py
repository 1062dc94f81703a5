"""API keys: issuing, verifying and caching them."""
