"""`forensic tui`: triage a folder of images and videos in a Textual terminal UI.

Entry point `forensic.tui.app.ForensicApp.for_folder`; the scan thread is in `jobs`, the results
cache in `cache`, exports in `export`, table state in `state`, messages in `messages` and one
widget or screen per module in `widgets`.
"""
