"""Feature caches: a frozen backbone's eval-mode features extracted once per image, heads trained on them."""
from .extract import write_feature_cache
from .provenance import StaleCacheError, backbone_hash, check_fresh, config_hash
from .store import FeatureCache, FeatureCacheWriter
from .transforms import LoadCachedFeatures, PackCachedSegInputs

__all__ = ['write_feature_cache', 'StaleCacheError', 'backbone_hash', 'check_fresh', 'config_hash', 'FeatureCache',
           'FeatureCacheWriter', 'LoadCachedFeatures', 'PackCachedSegInputs']
