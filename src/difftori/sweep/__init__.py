"""Experiment grids on Ray (``difftori sweep``): cells, the resumable runner, and reports.

- ``grid``: cells (one CLI run each) with stable ids from their resolved configs, RL and IL grids.
- ``runner``: the cells as Ray tasks, one subprocess each; skip / resume / retry from what is on disk.
- ``report``: tidy CSV, Markdown summary and plots of one or several sweep directories.

Ray is the optional extra ``sweep`` (``pip install 'difftori[sweep]'``); only the runner imports it.
"""
