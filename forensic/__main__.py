from forensic.cli import app

app(prog_name="forensic")
