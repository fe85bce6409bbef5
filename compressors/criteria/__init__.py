"""The criteria: one module per method (or family), each one registered class per criterion.

Every module of this folder is imported on the first registry lookup (:data:`compressors.REGISTRY`), so
``ls compressors/criteria`` lists every criterion and dropping a file with one ``@register`` class here adds
one, usable from JSON with no other edit.  The library they are written with sits one level up:
:mod:`compressors.base` (contract, prunable set), :mod:`compressors.options` (shared option bases),
:mod:`compressors.estimators` (gradients, Fisher, Hutchinson, Hessian-vector products),
:mod:`compressors.taylor`, :mod:`compressors.masks`, :mod:`compressors.structures`, :mod:`compressors.costs`
and :mod:`compressors.cache`."""
