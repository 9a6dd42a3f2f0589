include $(sort $(wildcard $(BR2_EXTERNAL_LEVEE_PATH)/package/*/*.mk))
