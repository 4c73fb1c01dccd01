from nixos_test_ng._native import VLan as VLan
