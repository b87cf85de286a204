"""Development tools: the Infobip simulator, `poller demo` and a throwaway Redis/Valkey server.

Used by the tests, the benchmarks and the demo; the daemon never imports them, and the
container image is built without this package (``.dockerignore``)."""
