"""The aiohttp API process: JSON API, Server-Sent Events, web pages, health and metrics.

It only reads what the collector stored (Postgres) and what it published (Redis).
"""
