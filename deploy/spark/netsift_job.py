"""spark-submit entry of netsift jobs: runs ``python -m netsift.cli ARGS...``.

spark-submit takes a Python file, not ``-m module``. Pointing it at ``netsift/cli.py``
itself would put the package directory first on ``sys.path``, where netsift's own
``platform`` package would shadow the standard library's. The image installs this file
as ``/opt/netsift/netsift_job.py``:

    spark-submit ... local:///opt/netsift/netsift_job.py analyze ...
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("netsift.cli", run_name="__main__", alter_sys=True)
