"""The codes sidecar, under its old name: the format lives in :mod:`tritium.pack.codes`, where training
(``init_from``) may read it too without depending on export."""

from ..pack.codes import (
    CODES_FILE,
    CODES_FORMAT,
    CODES_VERSION,
    PARTS,
    Codes,
    CodesError,
    codes_bytes,
    has_codes,
    load_codes,
    pack_for_sidecar,
    write_codes,
)

__all__ = ["CODES_FILE", "CODES_FORMAT", "CODES_VERSION", "PARTS", "Codes", "CodesError", "codes_bytes", "has_codes", "load_codes", "pack_for_sidecar", "write_codes"]
