"""Who may talk to Tandem: API keys at the gateway when it listens beyond loopback
(exposure.py), a shared cluster token on every worker RPC (cluster_token.py), TLS for the
gateway's gRPC and HTTP (tls.py)."""
