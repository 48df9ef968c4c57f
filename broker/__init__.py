"""The broker: sequences every message of the cluster and fans it out to edges.

Never imports Django; `runpushserver --role=broker` builds a `BrokerConfig`
from the Django settings and hands it over.
"""
