import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))
os.environ["TLC_VERIFY"] = "1"  # the IR verifier runs after every pass in tests
warnings.filterwarnings("ignore", category=FutureWarning)
