"""The moto versions the adapters in this directory were written against. Each adapter's `install()` calls
`require()` first: on another moto it fails loudly instead of patching code it does not know."""

import moto

SUPPORTED = ("5.2.",)


def require(adapter):
    version = getattr(moto, "__version__", "unknown")
    if not version.startswith(SUPPORTED):
        raise RuntimeError(
            f"tests/moto/{adapter}.py patches moto {' or '.join(v + 'x' for v in SUPPORTED)}, "
            f"not moto {version}: check the adapter against this version and update SUPPORTED"
        )
