"""placeholder"""
def add_report_command(commands, command):
    pass
