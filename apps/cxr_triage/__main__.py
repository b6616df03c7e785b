from apps.cxr_triage.app import CxrTriageApp
from operators.launch import main

main(CxrTriageApp)
