from apps.lab_severity.app import LabSeverityApp
from operators.launch import main

main(LabSeverityApp)
