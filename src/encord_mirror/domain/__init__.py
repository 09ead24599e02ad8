"""The mirror's domain: pure Python, no boto3, no encord. It talks to the ports in `ports.py`."""
