"""The datasets: one module per dataset family, each registering :class:`data.base.DatasetSource` classes.

Every module of this folder is imported on the first registry lookup (:data:`data.REGISTRY`), so
``ls data/datasets`` lists every dataset family and dropping a file with one ``@register`` class here adds
one.  What they are written with sits one level up: :mod:`data.base` (contract), :mod:`data.roots`,
:mod:`data.download`, :mod:`data.arrays`, :mod:`data.transforms`, :mod:`data.options`,
:mod:`data.image_files`, :mod:`data.image_cache`, and the loaders (:mod:`data.loaders`,
:mod:`data.device_loader`)."""
