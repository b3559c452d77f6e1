"""What the controller shows: the metrics collector and HTTP endpoints, and the generators of
Prometheus rules and Grafana dashboards."""
