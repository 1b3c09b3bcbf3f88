"""ultraseg: breast-ultrasound lesion segmentation, from the BUSI archive to an int8 edge model."""
