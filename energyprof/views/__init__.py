"""What people look at: plots (``plot``), the self-contained HTML report (``report``), the
figures of the analyses (``analysis_plots``), the terminal views (``terminal``) and the live
Jupyter plot (``live``).  Imports analysis, store and the base modules; never measure or cli
(a view takes a run, or a session by its duck type)."""
