"""Adapters: the ports of `encord_mirror.domain.ports` over real services and local stand-ins."""
