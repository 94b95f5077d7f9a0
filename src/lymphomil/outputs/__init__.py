"""What lymphomil writes and how: one import for the four jobs, each in its own module.

* :mod:`~lymphomil.outputs.files` — atomic writes, JSON, checksums (files a later run trusts);
* :mod:`~lymphomil.outputs.ownership` — what may be replaced (markers, single-file records),
  where an output or a cache may not go;
* :mod:`~lymphomil.outputs.locks` — one writer per output (locks, claims), staged folders;
* :mod:`~lymphomil.outputs.roots` — where the caches live, and where they may not.
"""

from __future__ import annotations

from lymphomil.outputs.files import (
                                     CHECKSUMS,
                                     DIR_MODE,
                                     FILE_MODE,
                                     atomic_write_bytes,
                                     atomic_write_json,
                                     atomic_write_text,
                                     dumps_json,
                                     host_name,
                                     is_intact,
                                     listed_path_problem,
                                     owner_tag,
                                     pid_alive,
                                     read_json,
                                     sha256_file,
                                     strict,
                                     sweep_stale_temp_files,
                                     verify_dir,
                                     write_checksums,
)
from lymphomil.outputs.locks import (
                                     acquire_output_lock,
                                     claim_output,
                                     output_lock,
                                     release_claims,
                                     release_output_lock,
                                     staged_dir,
                                     sweep_stale_staging,
                                     write_cache_entry,
)
from lymphomil.outputs.ownership import (
                                     KINDS,
                                     OUTPUT_MARKER,
                                     changed_files,
                                     check_cache_location,
                                     check_not_an_input,
                                     check_not_inside_output,
                                     ensure_file_replaceable,
                                     ensure_replaceable,
                                     file_record_path,
                                     folder_kind,
                                     foreign_files,
                                     owned_file,
                                     read_output_marker,
                                     remove_owned_file,
                                     write_output_marker,
                                     write_owned_file,
)
from lymphomil.outputs.roots import CACHE_PARTS, cache_root, cv_cache, default_cache_root

__all__ = ["CACHE_PARTS", "CHECKSUMS", "DIR_MODE", "FILE_MODE", "KINDS", "OUTPUT_MARKER",
           "acquire_output_lock", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "cache_root", "changed_files", "check_cache_location", "check_not_an_input",
           "check_not_inside_output", "claim_output", "cv_cache", "default_cache_root",
           "dumps_json", "ensure_file_replaceable", "ensure_replaceable", "file_record_path",
           "folder_kind", "foreign_files", "host_name", "is_intact", "listed_path_problem",
           "output_lock", "owned_file",
           "owner_tag", "pid_alive", "read_json", "read_output_marker", "release_claims",
           "release_output_lock", "remove_owned_file", "sha256_file", "staged_dir", "strict",
           "sweep_stale_staging", "sweep_stale_temp_files", "verify_dir", "write_cache_entry",
           "write_checksums", "write_output_marker", "write_owned_file"]
