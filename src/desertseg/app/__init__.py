"""The Streamlit dashboard: ``page`` (the script ``desertseg app`` serves: parse, call, show) over
``logic`` (uploads, model choice, scoring; testable without Streamlit).

May import: everything below it; nothing imports it but the CLI.
"""
