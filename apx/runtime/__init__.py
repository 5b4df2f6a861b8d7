"""Process runtime shared by every APX process: malloc tuning, freed memory, the cyclic collector.

Installed as ``apx.runtime``. ``process`` is called by the operator
(``apx.operator.main``, the reconciler), the emulated Kubernetes API and the
dataplane services; ``gcpause`` by the pure core around large builds and by
``process.HeapKeeper``. It imports nothing else of the project, so the
operator and the dataplane can share it without depending on each other.
"""
