"""The admin API: HTTPS, JSON under ``/api/v1/``, operators authenticated by bearer token and
authorised by role and tenant in one place (docs/api.md).

Its modules: ``errors`` (the API's own refusals and the one table from reason code to HTTP
status), ``wire`` (records as JSON and back: shared with the command line's remote backend, so
it imports no server module), ``auth`` (credentials, the principal, the single authorisation
check), ``schema`` (request bodies: validation and their OpenAPI form), ``routes`` (the
endpoints, each declared read or change), ``app`` (the Starlette application: one guard every
route goes through), ``openapi`` (the document), ``server`` (the listener: hypercorn's Trio
worker inside ``switch serve``'s nursery, TLS with the server certificate).
"""
