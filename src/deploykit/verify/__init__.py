"""Verification: run an export folder's artifacts and their reference on the same images; judge with
:mod:`deploykit.parity`; record the verdicts in the manifest.

One flow (:func:`verify_folder`, in ``run.py``) serves ``deploykit export`` (the in-memory PyTorch model and the
manifest being written), ``deploykit verify``, ``deploykit build`` (an engine just built) and ``deploykit bench``
(parity of each timed row). ``reference.py`` chooses what the artifacts are judged against and on which images;
``openvino.py`` holds the extra runs of ``--backend ov``; ``fp16.py`` asks PyTorch why an FP16 graph failed.
"""

from deploykit.verify.fp16 import explain_fp16_failures, fp16_stand_in_caveat
from deploykit.verify.reference import (MAX_SOURCE_HASH_BYTES, RECORDED, FixedLogits, Reference, choose_reference,
                                        reference_runner, source_unusable, verification_data)
from deploykit.verify.run import (KnownLogits, compare_runners, on_backend, parity_record, record_parity,
                                  verify_folder)


__all__ = ["MAX_SOURCE_HASH_BYTES", "RECORDED", "FixedLogits", "KnownLogits", "Reference", "choose_reference",
           "compare_runners", "explain_fp16_failures", "fp16_stand_in_caveat", "on_backend", "parity_record",
           "record_parity", "reference_runner", "source_unusable", "verification_data", "verify_folder"]
