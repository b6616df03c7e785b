from apps.mr_segmentation.app import MRSegmentationApp
from operators.launch import main

main(MRSegmentationApp)
