"""The HTTP app: the Sanic factory and one blueprint a file (dashboard, stats, exports and
downloads, admin jobs, ops, the OpenAPI document and /docs, the /admin page and its assets),
admin auth and the connection limits of the HTTP protocol."""
