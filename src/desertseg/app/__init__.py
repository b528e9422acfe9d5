"""The Streamlit dashboard: ``page`` (the script ``desertseg app`` serves: parse, call, show)
and its ``sidebar`` (model and display choices), over ``logic`` (uploads, scoring),
``models_dir`` (which model files may load) and ``video_upload``, all testable without
Streamlit.

May import: everything below it; nothing imports it but the CLI.
"""
